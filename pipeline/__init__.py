"""The evaluation pipeline, between the scripts and the parts they connect:

    dataset -> model.forward_features -> feature cache -> detector (fit on training statistics,
    score features) -> metrics -> report (table, results.json, scores, plots)

``config`` holds the typed run configurations the scripts build from their flags (``flags``);
``setup`` loads the classifier and the datasets; ``statistics`` the ID training statistics;
``scoring`` scores a detector on feature arrays or, for network-level detectors, on images;
``evaluate``, ``precompute`` and ``sweep`` are the three jobs; ``report`` writes what they found.
"""
