# experiment: the skewed soak with the decoded cache at a given size (argv[1])
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import bench.soak as s
s.CACHE_KEYS = int(sys.argv.pop(1))
from bench.run import main
sys.exit(main())
