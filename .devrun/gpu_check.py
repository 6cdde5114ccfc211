"""Device-only check: torch engine on CUDA (eager vs CUDA graphs) parity and latency."""
import time, torch, numpy as np
from endofuse.model import build_model
from endofuse.realtime.engines.torch_engine import TorchEngine
print(torch.cuda.get_device_name(), torch.__version__)
for name in ("tiny", "small", "paper"):
    torch.manual_seed(0)
    model = build_model(name).eval()
    S = model.img_size
    eager = TorchEngine(model, model_label=name, device="cuda", cuda_graphs=False)
    graphs = TorchEngine(model, model_label=name, device="cuda", cuda_graphs=True)
    x = torch.rand(1, 3, S, S, device="cuda"); y = torch.rand(1, 3, S, S, device="cuda")
    for nbi in (y, None):
        a = eager.infer(x, nbi); b = graphs.infer(x, nbi)
        print(name, "nbi" if nbi is not None else "missing", "max|graphs-eager|", (a - b).abs().max().item())
    # graphs must follow new inputs (not replay stale buffers)
    x2 = torch.rand_like(x)
    print(name, "new input max diff", (eager.infer(x2, y) - graphs.infer(x2, y)).abs().max().item())
    for eng, label in ((eager, "eager"), (graphs, "cuda-graphs")):
        for _ in range(10): eng.infer(x, y)
        torch.cuda.synchronize(); times = []
        for _ in range(100):
            t = time.perf_counter(); eng.infer(x, y); torch.cuda.synchronize(); times.append((time.perf_counter() - t) * 1e3)
        print(f"{name} {label}: p50 {np.percentile(times, 50):.2f} ms p99 {np.percentile(times, 99):.2f} ms")
