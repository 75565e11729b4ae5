"""The paper's figures, computed and drawn by the library (Pillow only; matplotlib is not a dependency).

    Fig. 3  fig3_update_ratio.png    left:  pixel update ratio mean(min(1, A + l)) per attention method and lower
                                            bound l, averaged over images (yoda.masks.pixel_update_ratio)
                                     right: refined area, the % of pixels with A >= tau(t) = t/T - l, for
                                            t = T..1, per method at one l (averaged over images)
    Fig. 5  fig5_regional_error.png  pixels binned by A (bins of [0, 1]); per bin the MSE and PSNR of SR vs HR
                                     for plain and YODA sampling (points), with a numpy.polyfit line through
                                     the points; LPIPS per bin only with local LPIPS weights (spatial map)
    Fig. 4  fig4_crops.png           bicubic / plain / YODA / HR crops, PSNR and CIELAB ab shift under each

Computation and drawing are separate, so that tests check the numbers (numbers.py: pure functions; compute.py:
sampling a set of images; draw.py: the Pillow figures; the plotting primitives are yoda.drawing):

    attention_map(extractor, lr, hr_size)          A at HR size, exactly as yoda.sample resizes it
    update_ratio_table(maps, lower_bounds)         Fig. 3 left
    refined_area_curve(maps, T, lower_bound)       Fig. 3 right
    regional_error(srs, hrs, maps, bins, extra)    Fig. 5 (pixels pooled over images in each bin)
    poly_fit(x, y, degree, count)                  Fig. 5 lines (bin_fit: of a bin table's key; of log MSE)
    lpips_layer_maps / lpips_map(metric, sr, hr)   spatial LPIPS (the lpips package's spatial=True)
    best_crop(A, size), crop_metrics(...)          Fig. 4
    compute(model, images, settings)               everything above for a set of HR images, sampling plain
                                                   and YODA with one seed -> FigureData
    draw_update_ratio(ratios, ...) / draw_regional_error(regional, fits, degree) / draw_crops(crops) -> PIL.Image;  write_figures(data, folder)

Conventions:
- A is the map yoda.sample uses: the extractor's map of the LR image, resized bilinearly to HR and min-max
  normalised (yoda.sampling.prepare.resolve_attention). Every figure uses A at HR resolution.
- Masks compare in float32, as the kernels do (yoda.masks).
- Errors are in 8-bit units on the rounded images (as yoda.evaluate): per-pixel squared error is the mean over
  the 3 channels; a bin's MSE is the sum over its pixels (of all images) / its pixel count; its PSNR is
  10 log10(255^2 / MSE). Bin i holds edges[i] <= A < edges[i + 1] (the last bin includes A = 1).
- The YODA attention of Fig. 4 and 5 is the first of ``settings.attentions``.
"""

from ..drawing import nice_ticks  # noqa: F401  (the tick rule of every axis; tests check it)
from .compute import FigureData, FigureSettings, compute
from .draw import (CROP_COLUMNS, FIG3_SIZE, FIG5_PANEL, FIGURE_FILES, crops_figure_size,  # noqa: F401
                   draw_crops, draw_regional_error, draw_update_ratio, write_figures)
from .numbers import (attention_map, best_crop, bin_edges, bin_fit, crop_metrics, lpips_layer_maps, lpips_map,
                      poly_fit, refined_area_curve, regional_error, update_ratio_table)

__all__ = [
    "FIGURE_FILES",
    "FigureSettings",
    "FigureData",
    "attention_map",
    "update_ratio_table",
    "refined_area_curve",
    "bin_edges",
    "regional_error",
    "poly_fit",
    "bin_fit",
    "lpips_layer_maps",
    "lpips_map",
    "best_crop",
    "crop_metrics",
    "compute",
    "draw_update_ratio",
    "draw_regional_error",
    "draw_crops",
    "crops_figure_size",
    "write_figures",
]
