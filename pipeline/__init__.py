"""DICOM layer: ingest ultrasound, calibrate, write DICOM-SEG, talk to PACS, keep tables and a ledger.

Never imports prefect (flows/ wires this package) and never reaches into sam2rad internals beyond its
public predict API.
"""
