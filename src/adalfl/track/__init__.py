"""Where results go: metrics.jsonl, result.json, plots and Weights & Biases."""
