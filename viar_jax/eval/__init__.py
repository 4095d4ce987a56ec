"""Evaluation: ADM metrics, FID Inception, LPIPS, the digits quality harness."""
