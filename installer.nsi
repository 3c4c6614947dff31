; MedVision Windows installer (NSIS 3, Unicode).
;
; Installs the frozen app (packaging/medvision.spec, one folder), the model pack, Start-menu
; entries, optionally the DICOM node as a Windows service (WinSW wrapper) with a firewall
; rule for its port, and a data directory with restricted ACLs. The uninstaller keeps
; patient data unless asked to remove it.
;
; Compile against a staged directory (on Windows or Linux, Debian package `nsis`):
;     makensis -DSTAGE=C:\build\stage [-DVERSION=0.1.0] [-DOUTFILE=...] [-DEMBED_PACK] [-DFAST] installer.nsi
; STAGE layout:
;     app\            the frozen one-folder app: medvision.exe and its _internal\ folder
;     tools\WinSW-x64.exe (+ WinSW-x64.exe.config)   the service wrapper (from the bundle)
;     modelpack\pack.tar   only with -DEMBED_PACK (NSIS installers stop at 2 GB: large packs
;                          travel beside the installer instead, as modelpack\*.tar)
;     README.md            optional, installed as the documentation
; -DFAST stores without compression (CI compile checks).
;
; Installer command line (silent installs: /S):
;     /DICOMPORT=11112  /AET=MEDVISION  /BIND=0.0.0.0  /ALLOW="CT01,PACS@10.0.0.5"
; Uninstaller command line: /REMOVEDATA also deletes the patient data directory.

Unicode true
!ifndef STAGE
  !error "define the staged directory: makensis -DSTAGE=<dir> installer.nsi"
!endif
!ifndef VERSION
  !define VERSION "0.1.0"
!endif
!ifndef OUTFILE
  !define OUTFILE "MedVision-Setup-${VERSION}.exe"
!endif
!define PRODUCT "MedVision"
!define PUBLISHER "MedVision project"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\MedVision"
!define ENV_KEY "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"
!define SERVICE_ID "MedVisionDicom"
!define FIREWALL_RULE "MedVision DICOM node"
!define DEFAULT_PORT "11112"
!define DEFAULT_AET "MEDVISION"

!ifdef FAST
  SetCompress off
!else
  SetCompressor /SOLID lzma
!endif

!include "MUI2.nsh"
!include "FileFunc.nsh"
!include "LogicLib.nsh"
!include "x64.nsh"
!include "WinMessages.nsh"

Name "${PRODUCT} ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\${PRODUCT}"
InstallDirRegKey HKLM "${UNINST_KEY}" "InstallLocation"
RequestExecutionLevel admin
ShowInstDetails show
ShowUninstDetails show
BrandingText "${PRODUCT} ${VERSION} - research and education, not for diagnostic use"

Var DataDir
Var DicomPort
Var DicomAET
Var DicomBind
Var DicomAllow
Var RemoveData

!define MUI_ABORTWARNING
!define MUI_COMPONENTSPAGE_SMALLDESC
!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!define MUI_FINISHPAGE_RUN "$INSTDIR\medvision.exe"
!define MUI_FINISHPAGE_RUN_PARAMETERS "desktop"
!define MUI_FINISHPAGE_RUN_NOTCHECKED
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_COMPONENTS
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

VIProductVersion "${VERSION}.0"
VIAddVersionKey /LANG=${LANG_ENGLISH} "ProductName" "${PRODUCT}"
VIAddVersionKey /LANG=${LANG_ENGLISH} "FileVersion" "${VERSION}"
VIAddVersionKey /LANG=${LANG_ENGLISH} "ProductVersion" "${VERSION}"
VIAddVersionKey /LANG=${LANG_ENGLISH} "CompanyName" "${PUBLISHER}"
VIAddVersionKey /LANG=${LANG_ENGLISH} "FileDescription" "${PRODUCT} installer"
VIAddVersionKey /LANG=${LANG_ENGLISH} "LegalCopyright" "Apache-2.0"

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "${PRODUCT} needs 64-bit Windows." /SD IDOK
    Abort
  ${EndIf}
  SetRegView 64
  SetShellVarContext all
  StrCpy $DataDir "$APPDATA\${PRODUCT}"  ; ProgramData (SetShellVarContext all)
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/DICOMPORT=" $DicomPort
  ${If} ${Errors}
  ${OrIf} $DicomPort == ""
    StrCpy $DicomPort "${DEFAULT_PORT}"
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/AET=" $DicomAET
  ${If} ${Errors}
  ${OrIf} $DicomAET == ""
    StrCpy $DicomAET "${DEFAULT_AET}"
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/ALLOW=" $DicomAllow
  ${If} ${Errors}
    StrCpy $DicomAllow ""
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/BIND=" $DicomBind
  ${If} ${Errors}
  ${OrIf} $DicomBind == ""
    ; Listen on the network only when the site named who may call; else loopback only.
    ${If} $DicomAllow == ""
      StrCpy $DicomBind "127.0.0.1"
    ${Else}
      StrCpy $DicomBind "0.0.0.0"
    ${EndIf}
  ${EndIf}
FunctionEnd

; Writes the allow list as a TOML array: "A,B@h" -> "A", "B@h"
Function WriteAllowList
  ; $0 = file handle, $DicomAllow = comma list
  StrCpy $1 $DicomAllow
  StrCpy $2 ""
  loop:
    ${If} $1 == ""
      Goto done
    ${EndIf}
    StrCpy $3 $1 1
    StrCpy $1 $1 "" 1
    ${If} $3 == ","
      ${If} $2 != ""
        FileWrite $0 '"$2", '
      ${EndIf}
      StrCpy $2 ""
    ${Else}
      StrCpy $2 "$2$3"
    ${EndIf}
    Goto loop
  done:
  ${If} $2 != ""
    FileWrite $0 '"$2"'
  ${EndIf}
FunctionEnd

Section "${PRODUCT} (required)" SEC_APP
  SectionIn RO
  SetOutPath "$INSTDIR"
  ; Upgrade: an old service must not hold files open.
  ${If} ${FileExists} "$INSTDIR\service\${SERVICE_ID}.exe"
    nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" stop'
    Pop $0
  ${EndIf}
  RMDir /r "$INSTDIR\_internal"
  File /r "${STAGE}\app\*.*"
  !if /FileExists "${STAGE}\README.md"
    File "/oname=$INSTDIR\README.md" "${STAGE}\README.md"
  !endif

  ; Model pack: verified (sha256, manifest, signature when the site trusts a key) and
  ; swapped in atomically by the app itself.
  !ifdef EMBED_PACK
    InitPluginsDir
    File "/oname=$PLUGINSDIR\pack.tar" "${STAGE}\modelpack\pack.tar"
    StrCpy $1 "$PLUGINSDIR\pack.tar"
  !else
    StrCpy $1 ""
    FindFirst $2 $3 "$EXEDIR\modelpack\*.tar"
    ${If} $3 != ""
      StrCpy $1 "$EXEDIR\modelpack\$3"
    ${EndIf}
    FindClose $2
  !endif
  ${If} $1 != ""
    DetailPrint "Importing the model pack $1"
    nsExec::ExecToLog '"$INSTDIR\medvision.exe" packtransfer import "$1" "$INSTDIR\modelpack"'
    Pop $0
    ${If} $0 != 0
      MessageBox MB_ICONSTOP "The model pack was refused (damaged, tampered or not signed by a trusted key). See the details." /SD IDOK
      Abort
    ${EndIf}
  ${ElseIfNot} ${FileExists} "$INSTDIR\modelpack\manifest.json"
    MessageBox MB_ICONEXCLAMATION "No model pack found next to the installer (modelpack\*.tar). Import one later with medvision models import-pack." /SD IDOK
  ${EndIf}

  ; Data directory: sessions, encrypted database, its key file, exports, DICOM spool.
  ; Inheritance from ProgramData (readable by all users) is cut; SYSTEM and Administrators
  ; get full control, interactive users modify (tighten to a group with icacls).
  CreateDirectory "$DataDir"
  CreateDirectory "$DataDir\data"
  nsExec::ExecToLog 'icacls "$DataDir" /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-4:(OI)(CI)M" /T /C /Q'
  Pop $0
  ${If} $0 != 0
    DetailPrint "icacls failed ($0): check the permissions of $DataDir"
  ${EndIf}

  ; DICOM node settings (kept on upgrade).
  ${IfNot} ${FileExists} "$DataDir\dicom-node.toml"
    FileOpen $0 "$DataDir\dicom-node.toml" w
    FileWrite $0 "# MedVision DICOM node (see README: DICOM node setup)$\r$\n"
    FileWrite $0 'ae_title = "$DicomAET"$\r$\n'
    FileWrite $0 "port = $DicomPort$\r$\n"
    FileWrite $0 'bind_address = "$DicomBind"$\r$\n'
    FileWrite $0 "# empty allows every caller: list the modalities / PACS (AE or AE@host)$\r$\n"
    FileWrite $0 "allowed_callers = ["
    Call WriteAllowList
    FileWrite $0 "]$\r$\n"
    FileClose $0
  ${EndIf}

  ; Every MedVision process on this machine shares the data dir and the installed pack.
  WriteRegExpandStr HKLM "${ENV_KEY}" "MEDVISION_HOME" "$DataDir\data"
  WriteRegExpandStr HKLM "${ENV_KEY}" "MEDVISION_MODEL_PACK" "$INSTDIR\modelpack"
  SendMessage ${HWND_BROADCAST} ${WM_WININICHANGE} 0 "STR:Environment" /TIMEOUT=5000

  ; Start menu.
  CreateDirectory "$SMPROGRAMS\${PRODUCT}"
  CreateShortCut "$SMPROGRAMS\${PRODUCT}\${PRODUCT}.lnk" "$INSTDIR\medvision.exe" "desktop" "$INSTDIR\medvision.exe" 0
  CreateShortCut "$SMPROGRAMS\${PRODUCT}\${PRODUCT} command prompt.lnk" "$SYSDIR\cmd.exe" '/k "cd /d "$INSTDIR" && medvision.exe --help"'
  CreateShortCut "$SMPROGRAMS\${PRODUCT}\DICOM node status.lnk" "$SYSDIR\cmd.exe" '/k ""$INSTDIR\medvision.exe" dicom-node status --config "$DataDir\dicom-node.toml""'
  ${If} ${FileExists} "$INSTDIR\README.md"
    CreateShortCut "$SMPROGRAMS\${PRODUCT}\README.lnk" "$WINDIR\notepad.exe" '"$INSTDIR\README.md"'
  ${EndIf}
  CreateShortCut "$SMPROGRAMS\${PRODUCT}\Uninstall ${PRODUCT}.lnk" "$INSTDIR\uninstall.exe"

  ; Add/Remove Programs.
  WriteUninstaller "$INSTDIR\uninstall.exe"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "${PRODUCT}"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\medvision.exe"
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegDWORD HKLM "${UNINST_KEY}" "EstimatedSize" "$0"
SectionEnd

Section /o "DICOM node as a Windows service" SEC_SERVICE
  SetOutPath "$INSTDIR\service"
  File "/oname=${SERVICE_ID}.exe" "${STAGE}\tools\WinSW-x64.exe"
  !if /FileExists "${STAGE}\tools\WinSW-x64.exe.config"
    File "/oname=${SERVICE_ID}.exe.config" "${STAGE}\tools\WinSW-x64.exe.config"
  !endif
  ; WinSW reads <exe name>.xml beside itself.
  FileOpen $0 "$INSTDIR\service\${SERVICE_ID}.xml" w
  FileWrite $0 "<service>$\r$\n"
  FileWrite $0 "  <id>${SERVICE_ID}</id>$\r$\n"
  FileWrite $0 "  <name>MedVision DICOM node</name>$\r$\n"
  FileWrite $0 "  <description>Receives DICOM images (C-STORE SCP) and analyses them with MedVision.</description>$\r$\n"
  FileWrite $0 "  <executable>$INSTDIR\medvision.exe</executable>$\r$\n"
  FileWrite $0 '  <arguments>dicom-node serve --config "$DataDir\dicom-node.toml"</arguments>$\r$\n'
  FileWrite $0 '  <env name="MEDVISION_HOME" value="$DataDir\data"/>$\r$\n'
  FileWrite $0 '  <env name="MEDVISION_MODEL_PACK" value="$INSTDIR\modelpack"/>$\r$\n'
  FileWrite $0 "  <workingdirectory>$DataDir</workingdirectory>$\r$\n"
  FileWrite $0 "  <logpath>$DataDir\logs</logpath>$\r$\n"
  FileWrite $0 '  <log mode="roll-by-size"><sizeThreshold>10240</sizeThreshold><keepFiles>8</keepFiles></log>$\r$\n'
  FileWrite $0 '  <onfailure action="restart" delay="10 sec"/>$\r$\n'
  FileWrite $0 "  <startmode>Automatic</startmode>$\r$\n"
  FileWrite $0 "  <stoptimeout>30 sec</stoptimeout>$\r$\n"
  FileWrite $0 "</service>$\r$\n"
  FileClose $0
  CreateDirectory "$DataDir\logs"
  nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" uninstall'
  Pop $0
  nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" install'
  Pop $0
  ${If} $0 != 0
    MessageBox MB_ICONEXCLAMATION "The DICOM node service could not be installed (exit $0)." /SD IDOK
  ${EndIf}
  ; Inbound TCP to the node's port, for this program only, on domain and private networks.
  nsExec::ExecToLog 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  Pop $0
  nsExec::ExecToLog 'netsh advfirewall firewall add rule name="${FIREWALL_RULE}" dir=in action=allow protocol=TCP localport=$DicomPort program="$INSTDIR\medvision.exe" profile=domain,private enable=yes'
  Pop $0
  ${If} $0 != 0
    DetailPrint "netsh could not add the firewall rule ($0)"
  ${EndIf}
  nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" start'
  Pop $0
SectionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SEC_APP} "The desktop app, command line, MCP server, DICOM node program and the model pack."
  !insertmacro MUI_DESCRIPTION_TEXT ${SEC_SERVICE} "Run the DICOM node at boot as a Windows service, with a firewall rule for its port (default 11112)."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

; ---------------------------------------------------------------------------- uninstall

Function un.onInit
  SetRegView 64
  SetShellVarContext all
  StrCpy $DataDir "$APPDATA\${PRODUCT}"  ; ProgramData (SetShellVarContext all)
  StrCpy $RemoveData "0"
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/REMOVEDATA" $R1
  ${IfNot} ${Errors}
    StrCpy $RemoveData "1"
  ${EndIf}
FunctionEnd

Section "un.${PRODUCT}" UNSEC_APP
  SectionIn RO
  ${If} ${FileExists} "$INSTDIR\service\${SERVICE_ID}.exe"
    nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" stop'
    Pop $0
    nsExec::ExecToLog '"$INSTDIR\service\${SERVICE_ID}.exe" uninstall'
    Pop $0
  ${EndIf}
  nsExec::ExecToLog 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  Pop $0
  RMDir /r "$SMPROGRAMS\${PRODUCT}"
  RMDir /r "$INSTDIR\_internal"
  RMDir /r "$INSTDIR\modelpack"
  RMDir /r "$INSTDIR\service"
  Delete "$INSTDIR\medvision.exe"
  Delete "$INSTDIR\README.md"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegValue HKLM "${ENV_KEY}" "MEDVISION_HOME"
  DeleteRegValue HKLM "${ENV_KEY}" "MEDVISION_MODEL_PACK"
  SendMessage ${HWND_BROADCAST} ${WM_WININICHANGE} 0 "STR:Environment" /TIMEOUT=5000
  DeleteRegKey HKLM "${UNINST_KEY}"
  ${If} $RemoveData == "0"
    DetailPrint "Patient data kept in $DataDir"
  ${EndIf}
SectionEnd

Section /o "un.Remove patient data (sessions, database and its key, DICOM spool)" UNSEC_DATA
  StrCpy $RemoveData "1"
SectionEnd

Section "-un.remove data"
  ${If} $RemoveData == "1"
    MessageBox MB_YESNO|MB_ICONEXCLAMATION "Delete ALL patient data in $DataDir? This cannot be undone." /SD IDYES IDYES +2
    Goto keep
    RMDir /r "$DataDir"
    DetailPrint "Patient data removed from $DataDir"
  keep:
  ${EndIf}
SectionEnd

!insertmacro MUI_UNFUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${UNSEC_APP} "The program, the model pack, shortcuts, the service and its firewall rule."
  !insertmacro MUI_DESCRIPTION_TEXT ${UNSEC_DATA} "Also delete the data directory. Off by default: patient data is kept."
!insertmacro MUI_UNFUNCTION_DESCRIPTION_END
