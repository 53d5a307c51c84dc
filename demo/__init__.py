"""The DEMO wing: everything that makes and documents the demo ensemble, and nothing the runtime needs.

DEMO ONLY, synthetic radiographs, not for clinical use. It holds:

* ``fracscan.demo.synthetic``: the seeded synthetic radiograph generator (phantoms, scenes and
  fractures, file writers), the one generator for the demo, the ONNX parity check and the tests;
* ``fracscan.demo.inputs``: synthetic radiographs as model inputs, through the core pre-processing;
* ``fracscan.demo.build``: the demo build (``python -m fracscan.demo.build``, ``make demo-rebuild``);
* ``demo.toml``: the demo ensemble spec (``fracscan.spec.builtin_spec_path("demo")``);
* the build's artifacts beside them: ``report.json``, the tuning / test split predictions and
  labels, ``roc_test.png``. ``model_repository/`` stays the demo's generated Triton repository.

Nothing in the runtime core (``fracscan/*``) or the client imports this package; ``export/`` and
the tests may. This ``__init__`` imports nothing, so that finding ``demo.toml`` costs nothing.
"""
