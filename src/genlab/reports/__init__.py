"""Each experiment's figures, tables and record, one module per experiment module.

``genlab.reports.<module>`` turns what ``genlab.experiments.<module>`` measured (the rows of
its run directory, its results, its trained models) into PNG figures, CSV tables and its
:class:`genlab.record.Record`, which :meth:`genlab.engine.RunDir.write_record` renders into
``metrics.json`` and ``summary.md``. The experiment module imports its report module, never
the other way round, so an experiment file reads config, model, loss, training loop, and a
report module reads from the shared pieces only (:mod:`genlab.plots`, :mod:`genlab.record`,
:mod:`genlab.tables`, :mod:`genlab.dcgan_nets`, ...).
"""
