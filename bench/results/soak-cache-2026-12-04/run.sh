# The skewed three-worker soak with the decoded cache never full (2,000,000 keys), then at the soak's 50,000.
cd "$(dirname "$0")/../../.."
for size in 2000000 50000; do
  out=bench/results/soak-cache-2026-12-04/cache-$size
  mkdir -p "$out"
  .venv/bin/python bench/results/soak-cache-2026-12-04/run.py $size --phases soak --soak-workers 3 --soak-traffic skewed \
    --soak-seconds 240 --no-profile --out "$out" > "$out/bench.log" 2>&1
done
