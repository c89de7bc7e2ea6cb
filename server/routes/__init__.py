"""HTTP routers, one per resource. Route functions only translate HTTP <-> service calls."""
