"""Floor 2, the toolkits: what tasks and methods share, below both and above the contracts.

* :mod:`.metrics`: FID, KID and IS through torch-fidelity (offline ``mnist-net`` features), the
  CLIP score; :mod:`.data`: the embedded MNIST subset; :mod:`.assets`: the shipped networks and
  their records; :mod:`.cache`: the cache folder and atomic torch saves; :mod:`.atomic`: atomic
  file writes;
* :mod:`.seeding`: derived seeds, slot-true sampler seeding; :mod:`.zeroth_order`: the
  zeroth-order gradient estimators;
* :mod:`.recordings`: the recorded tables' format (read by the surrogate tasks, written by
  ``diffhpo record``).

A toolkit imports only the contracts (:mod:`diffhpo.bench.contracts`) and other toolkits.
"""
