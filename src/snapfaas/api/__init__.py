"""The HTTP front door: Lambda's REST API (control plane + Invoke), SigV4-authenticated."""
