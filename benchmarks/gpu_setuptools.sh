# Sourced by gpu_check.sh and gpu_session.sh on the device's copy of the tree, before they build: pyproject's SPDX
# license string needs setuptools >= 77, and an older one stops the build before any compile; that copy then gets
# the older TOML-table form. Needs PY (the Python) and LOG (a file the note is appended to).
if ! "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
  echo "setuptools $("$PY" -c 'import setuptools; print(setuptools.__version__)' 2>&1) < 77: license as a TOML table" \
    | tee -a "$LOG"
  sed -i 's/^license = "MIT"/license = { text = "MIT" }/; /^license-files/d' pyproject.toml
fi
