"""The three wire formats, typed once and torch-free.

- ``rest``: the objects the HTTP API returns (``response_model`` of every route).
- ``reports``: what a worker posts to the control plane (a union on ``kind``).
- ``events``: the Server-Sent Events of a run or an account (one model per ``kind``).

Nothing here imports the control plane or torch, so workers, the pipeline and the CLI may
import any of it.
"""
