"""The HTTP face: the Starlette app and its routes, passthrough, admin, OpenAPI,
uvicorn's protocol."""
