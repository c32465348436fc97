"""Analysis of simfed run directories: loading them into DataFrames (:mod:`analysis.load`) and drawing
the study's figures (:mod:`analysis.figures`, one stateless function per figure)."""
