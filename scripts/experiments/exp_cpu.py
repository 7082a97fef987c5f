import sys, time
from sfedge.models.presets import preset_checkpoint
from sfedge.export import export_model
t=time.perf_counter(); ck=preset_checkpoint("sf-llava-cpu"); print("checkpoint", ck, time.perf_counter()-t, flush=True)
prec=sys.argv[1]
t=time.perf_counter()
m=export_model(ck, f".cache/cpu-bench/engines-sf-llava-cpu-{prec}", precision=prec, device="cpu", max_frames=8, validate=True, force=True, progress=False)
print("export s", time.perf_counter()-t, m.get("export_seconds"), flush=True)
import json; print(json.dumps(m["validation"], indent=1)[:4000])
