"""optic's benchmark: the service over HTTP against the raw ONNX Runtime limit, same images, same machine.

`python -m bench.run` (or `make bench`). Modules, one job each:

- `bench.images`: the fixed, deterministic set of 640x480 JPEGs both sides use.
- `bench.raw`: the in-process limit: the service's own decode, preprocess, session.run and postprocess.
- `bench.server`: starts and always stops the real `bentoml serve` on a free loopback port.
- `bench.http_load`: cheap closed-loop HTTP clients (keep-alive `http.client`, prebuilt multipart bodies).
- `bench.report`: machine info, the table, the targets, the JSON file.
- `bench.run`: the command line that ties them together.
"""

ENDPOINTS = {
    "classification": "/classify",
    "detection": "/detect",
    "segmentation": "/segment",
    "instance-segmentation": "/segment",
}
