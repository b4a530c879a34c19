"""The failure-mode labs behind ``minigrid lab``: each starts its own cluster, runs a workload,
injects its fault, measures, tears down, and writes report.md, series.csv and plot.png."""
