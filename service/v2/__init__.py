"""The Open Inference Protocol (KServe v2): REST routes under /v2 and a gRPC servicer, over one set of views."""
