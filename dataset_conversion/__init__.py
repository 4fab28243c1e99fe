"""The dataset converters: one module per public dataset, and what they share.

A converter module only knows its dataset's layout and quirks. It has two functions and a generator:

- ``register_converters(sources)`` calls :func:`~dataset_conversion.driver.add_converter` (``nnunet_mtl convert
  NAME SOURCE`` with the options every converter has, :func:`~dataset_conversion.options.add_common_arguments`:
  ``-d``, ``--name``, ``--as`` (with the dataset's default split), ``--add-to-existing``, ``--overwrite``,
  ``--normal``, ``-j``, ``--no-progress``) and adds its own options (``--target``, ...) to the parser it returns;
  running the command calls the converter function and prints
  :meth:`~dataset_conversion.report.ConversionReport.format`. Its names are listed in
  :data:`dataset_conversion.registry.CONVERTERS`, which ``nnunet_mtl convert`` and the recipe schema read.
- ``convert_NAME(source, options, *, <its own options>, raw_root=None) -> ConversionReport`` calls
  :func:`~dataset_conversion.driver.convert_source` with the dataset's target classes and a ``cases(report)``
  function; the driver resolves nnUNet_raw (its one-line error before any work), builds the report, lists the
  cases and converts them.
- ``cases(report)`` checks the source folder with :func:`~dataset_conversion.common.find_layout` (a wrong folder
  gives one line naming the layout expected) and yields one :class:`~dataset_conversion.common.Case` per image
  (what to read, class, patient, spacing, clinical columns) or a :class:`~dataset_conversion.common.Skipped` (with
  the reason) for an entry it cannot use, recording unusable clinical values with
  :meth:`~dataset_conversion.report.ConversionReport.number` /
  :meth:`~dataset_conversion.report.ConversionReport.bad_value`. A source too large to list first returns a
  :class:`~dataset_conversion.common.CaseStream` (the cases with their number).

The shared modules:

- :mod:`dataset_conversion.registry`: the converter names and the module that registers each (no imports).
- :mod:`dataset_conversion.common`: what converters use to read a source: cases, layout checks, spreadsheets,
  images and masks, clinical values.
- :mod:`dataset_conversion.options`: the options every converter has (:class:`ConvertOptions`).
- :mod:`dataset_conversion.driver`: the conversion driver and its worker pool; the policies every converter
  follows (normal images, duplicates, ``--resize``, bad cases) are documented there once.
- :mod:`dataset_conversion.duplicates`: exact duplicates, near-duplicates and label conflicts.
- :mod:`dataset_conversion.report`: the conversion report (printed, and ``conversion_report.json``).

Every converter writes through :class:`nnunet_mtl.dataset.writer.RawDatasetWriter`, the core's writer of the raw
dataset contract (the core never imports this package's converters).
"""
