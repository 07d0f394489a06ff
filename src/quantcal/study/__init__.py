"""Running work: one evaluation job (:mod:`~quantcal.study.jobs`), study files and the plan of variants x tasks
(:mod:`~quantcal.study.spec`, :mod:`~quantcal.study.runner`), the Ray executor, layer-wise sensitivity runs and a
study's variants exported with their fitted temperatures."""
