import gc, os
if os.environ.get("EXP_GC0"):
    gc.set_threshold(int(os.environ["EXP_GC0"]), *gc.get_threshold()[1:])
