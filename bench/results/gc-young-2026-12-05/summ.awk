# gc.sh's output: a line per run, and the collector's seconds in it (the sums of every generation, after - before)
/round/ {print}
/before|after/ {s=0; for(i=2;i<=NF;i++){ if ($i ~ /_sum/) {n=split($i,a,"="); s+=a[n]} }; if ($1=="before:") b=s; else printf "   gc_s %.3f\n", s-b}
