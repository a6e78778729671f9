"""The evaluation science: image and pixel metrics with named threshold policies (the vocabulary of
``metrics.csv``), and the statistics of the report (bootstrap intervals, DeLong, ranks, the critical difference)."""
