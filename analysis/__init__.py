"""Analysis of simfed run directories: loading them into DataFrames (:mod:`analysis.load`), drawing the
study's figures (:mod:`analysis.figures`, one stateless function per figure), the paired seed-level
comparison tables (:mod:`analysis.compare`) and straggler attribution (:mod:`analysis.stragglers`)."""
