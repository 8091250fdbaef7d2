"""Inference runtimes: one module per way of running the card's model, one function that picks.

Every runtime takes uint8 NHWC batches (what the decode pool produces) and returns the probability of the
card's positive label per image (`base.Runtime`). `select.build_runtime` builds the candidates the settings
and the device allow, checks each against torch on the warm-up batch (`parity`), times them, picks the
fastest correct one (`auto`) and splits the CPUs between its threads and the decode pool (`threads`).
"""
