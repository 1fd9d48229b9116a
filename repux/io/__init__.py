"""Reading and writing files: images with their IJK->RAS geometry (``images``), DICOM series (``dicomseries``), DICOM SEG
(``dicomseg``), safe writes (``files``: temp file, verify, rename), folder locks (``locks``) and the segmentation outputs
(``outputs``)."""
