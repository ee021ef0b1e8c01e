"""Analysis of saved runs: the paper's numbers, readings, tables, figures, report, plot."""
