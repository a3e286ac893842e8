# Sourced (not run) by the bench scripts that start several runs side by side on the device machine:
# the carried wheels (.whl, from ../shared/tools/device-wheels) on PYTHONPATH with the repo, deterministic
# cuBLAS, unbuffered logs, `$SP` to call spine, and a TERM trap: `timeout` signals the calling shell only,
# so the trap stops every run it started (whole process trees), and the script goes on to write its archive.
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONUNBUFFERED=1
SP="python3 -m modules.cli"
kill_tree() { local c; for c in $(pgrep -P "$1"); do kill_tree "$c"; done; kill -TERM "$1" 2>/dev/null; }
trap 'for j in $(jobs -p); do kill_tree "$j"; done' TERM
