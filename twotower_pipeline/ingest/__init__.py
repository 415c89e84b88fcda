"""Runtime logs in: loaders that write the runtime collections, and the flatten/training-frame logic."""
