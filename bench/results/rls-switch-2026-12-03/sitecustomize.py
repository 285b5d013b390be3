# experiment: the GIL's switch interval in a worker, from BS_SWITCH_INTERVAL (seconds)
import os, sys
_v = os.environ.get("BS_SWITCH_INTERVAL")
if _v:
    sys.setswitchinterval(float(_v))
