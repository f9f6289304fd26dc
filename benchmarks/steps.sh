# Sourced by the device-call scripts (wgmma24_first_run.sh, wgmma24_stream.sh): OUT checked, the
# package on PYTHONPATH, GPU (h100 or h200: the GPU's folder under benchmarks/results) and CM (that
# folder's measured cost model), and `step <name> <seconds> <command...>`, which runs one step under its own
# time limit (one that hangs or runs long leaves the rest their time) with its output in
# $OUT/<name>.txt (CROSS_CUDA_DEFINES, where set, on its first line; the exit status on its last).
set -u
OUT=${OUT:?set OUT to a folder for the results}
export PYTHONPATH=src
case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H200*) GPU=h200 ;;
    *) GPU=h100 ;;
esac
CM=benchmarks/results/$GPU/costmodel.json
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: ${CROSS_CUDA_DEFINES:-} $*" | tee "$OUT/$name.txt"
    timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
    echo "exit $?" >> "$OUT/$name.txt"
    tail -4 "$OUT/$name.txt"
}
