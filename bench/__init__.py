"""optic's benchmark: the service over HTTP against the raw ONNX Runtime limit, same images, same machine.

`python -m bench.run` (or `make bench`). Modules, one job each:

- `bench.images`: the fixed, deterministic set of 640x480 JPEGs both sides use.
- `bench.raw`: the in-process limit: the service's own decode, preprocess, session.run and postprocess.
- `bench.server`: starts and always stops the real `bentoml serve` on a free loopback port.
- `bench.http_load`: the multipart request bodies, built once.
- `bench.wrk` (+ `wrk.lua`): drives a server with wrk, a C load generator: statuses counted, latency percentiles.
- `bench.peer`: the peer, FastAPI + uvicorn[standard] + ORT: what a user would write instead.
- `bench.soak`: a long run at a share of the measured capacity: errors and memory growth.
- `bench.report`: machine info, the table, the targets, the JSON file.
- `bench.run`: the command line that ties them together.
"""

ENDPOINTS = {
    "classification": "/classify",
    "detection": "/detect",
    "segmentation": "/segment",
    "instance-segmentation": "/segment",
}
