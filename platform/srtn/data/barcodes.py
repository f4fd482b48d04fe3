"""TCGA barcodes: the patient and the tissue source site of a slide, the units of the train/val/test split.

A TCGA slide file is named ``TCGA-<TSS>-<participant>-<sample...>.<uuid>.svs`` (for example
``TCGA-B0-4710-01Z-00-DX1.<uuid>.svs``); its first three fields, ``TCGA-B0-4710``, name the patient.
Two slides of one patient (DX1, DX2) must land in the same split, so the tiling pipeline groups by this.
The second field, the tissue source site (``B0``), names the lab that sent the tissue (and so, mostly, its
staining and scanner): grouping by it keeps whole sites out of training.
"""

from __future__ import annotations

import os
import re

__all__ = ["TCGA_PATIENT_RE", "patient_from_name", "site_from_name"]

TCGA_PATIENT_RE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?=$|[-._])", re.IGNORECASE)
"""A patient barcode at the start of a name, followed by the end, '-', '.' or '_'."""


def patient_from_name(name: str | os.PathLike[str]) -> str | None:
    """``TCGA-XX-XXXX`` (upper case) for a TCGA barcode, file name or path; None for anything else.

    Only the last path component is looked at, so a directory called TCGA-... does not leak into ids.
    """
    base = re.split(r"[/\\]", os.fspath(name).rstrip("/\\"))[-1]  # local, s3:// or Windows paths
    match = TCGA_PATIENT_RE.match(base)
    return match.group(1).upper() if match else None


def site_from_name(name: str | os.PathLike[str]) -> str | None:
    """The tissue source site code (``A3`` for ``TCGA-A3-3306-...``, upper case) of a TCGA barcode, file name
    or path; None for anything `patient_from_name` does not read as a TCGA patient."""
    patient = patient_from_name(name)
    return patient.split("-")[1] if patient else None
