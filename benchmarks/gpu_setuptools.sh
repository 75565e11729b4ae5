# Sourced by gpu_check.sh and gpu_session.sh before they build: pyproject's SPDX license string needs setuptools
# >= 77, and an older one stops the build before any compile. The file then gets the older TOML-table form for the
# build, and is put back as it was when the calling script exits (in a developer's checkout too, whose python3 may
# carry an old setuptools). Needs PY (the Python) and LOG (a file the note is appended to).
if ! "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
  echo "setuptools $("$PY" -c 'import setuptools; print(setuptools.__version__)' 2>&1) < 77: license as a TOML table" \
    "for the build" | tee -a "$LOG"
  if grep -q '^license = "MIT"' pyproject.toml; then  # (not when sourced again: gpu_session.sh, then gpu_check.sh)
    cp -p pyproject.toml pyproject.toml.yoda-orig  # put back by a rename: a read-only file's mode is kept too
    trap 'mv -f pyproject.toml.yoda-orig pyproject.toml' EXIT
    sed -i 's/^license = "MIT"/license = { text = "MIT" }/; /^license-files/d' pyproject.toml
  fi
fi
