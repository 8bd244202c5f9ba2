"""The Hub: artifacts of finished runs, kept until deleted, behind signed download links."""
