; MedVision Windows installer (NSIS).
; Placeholder until the packaging issue: the frozen app, model pack, Start-menu
; entries, optional DICOM node service, firewall rule and data-dir ACLs land there.
; It is not built by CI yet.
Name "MedVision"
OutFile "MedVision-Setup.exe"
InstallDir "$PROGRAMFILES64\MedVision"
RequestExecutionLevel admin
Section "MedVision"
  SetOutPath "$INSTDIR"
SectionEnd
