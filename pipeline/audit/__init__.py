"""Audit written DICOM-SEG objects against reference labels: Dice, IoU, HD95 and ASSD per frame,
instance and study, tables (Parquet + CSV) and a self-contained HTML report.

One module per step, in the order `run.run_audit` calls them: `references` (find SEGs and
reference labels) -> `comparison` (align and score one pair) -> `aggregation` (study rows, summary)
-> `worst_cases` (what the report draws) -> `report` (HTML). `rows` holds the table row types and
the flag threshold. Import from the step's module; this file stays light so the CLI can read
`rows.DEFAULT_DICE_THRESHOLD` without loading pandas or pydicom. Nothing here imports prefect.
"""
