"""After the procedure: the case record of a run (`run --case DIR`), its review page, DICOM export and PACS send."""
