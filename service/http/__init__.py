"""optic's own HTTP layer inside BentoML's process: form parsing, endpoints, the guard, OpenAPI."""
