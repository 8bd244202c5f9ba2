"""Webhooks: accounts register endpoints; a run that ends is announced to each of them.

One concern per module: ``signing`` (Standard Webhooks signatures), ``destinations``
(which addresses the server may call), ``endpoints`` (the account's endpoints and their
delivery log), ``delivery`` (recording deliveries and sending them, each account on a lane
of its own). The objects on the wire (the event a receiver gets, the REST views) are in
``tunery.wire.webhooks``.
"""
