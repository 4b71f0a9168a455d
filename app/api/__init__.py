"""FastAPI routers only: they translate HTTP to the service and back."""
