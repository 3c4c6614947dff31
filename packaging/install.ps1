<#
.SYNOPSIS
  Install MedVision from an offline bundle on Windows (no network: pip --no-index).

.DESCRIPTION
  The bundle must have been built on Windows x64 with the same Python minor version
  (packaging/build_bundle writes platform-specific wheels). Most sites use the NSIS
  installer (MedVision-Setup-<version>.exe, the frozen app) instead; this script is for a
  Python-based install, e.g. to script the MCP server on a Windows analysis host.

  Layout (same as install.sh): <Prefix>\versions\<bundle>\ (one venv per bundle),
  <Prefix>\current.txt naming the active one, <Prefix>\models\default (model pack,
  imported with verification and an atomic swap), launchers in <Prefix>\bin.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File install.ps1 -Prefix "C:\MedVision"
#>
param(
    [string]$Prefix = "$env:ProgramFiles\MedVision-Python",
    [string]$Python = "",
    [string[]]$TrustedKey = @(),
    [switch]$NoPack
)
$ErrorActionPreference = "Stop"
$Bundle = Split-Path -Parent $MyInvocation.MyCommand.Path

# pip sees only the bundle.
Remove-Item Env:PIP_INDEX_URL, Env:PIP_EXTRA_INDEX_URL, Env:PIP_FIND_LINKS -ErrorAction SilentlyContinue
$env:PIP_CONFIG_FILE = "nul"
$env:PIP_NO_INDEX = "1"
$env:PIP_DISABLE_PIP_VERSION_CHECK = "1"

Write-Host "[install] checking the bundle (SHA256SUMS)"
foreach ($line in Get-Content (Join-Path $Bundle "SHA256SUMS")) {
    if (-not $line) { continue }
    $digest, $name = $line -split "  ", 2
    $path = Join-Path $Bundle ($name -replace "/", "\")
    if (-not (Test-Path -LiteralPath $path)) { throw "the bundle is damaged: $name is missing" }
    $actual = (Get-FileHash -Algorithm SHA256 -LiteralPath $path).Hash.ToLower()
    if ($actual -ne $digest) { throw "the bundle is damaged or was modified: $name does not match SHA256SUMS" }
}

$info = Get-Content (Join-Path $Bundle "bundle.json") -Raw | ConvertFrom-Json
if (-not $Python) {
    $launcher = Get-Command py -ErrorAction SilentlyContinue
    if ($launcher) { $Python = (& py "-$($info.python)" -c "import sys; print(sys.executable)").Trim() }
    else { $Python = (Get-Command python -ErrorAction Stop).Source }
}
$have = (& $Python -c "import sys; print('%d.%d' % sys.version_info[:2])").Trim()
if ($have -ne $info.python) { throw "this bundle is for Python $($info.python), $Python is $have" }

New-Item -ItemType Directory -Force -Path "$Prefix\versions", "$Prefix\bin" | Out-Null
$Target = Join-Path "$Prefix\versions" $info.name
if (Test-Path $Target) { Remove-Item -Recurse -Force $Target }
Write-Host "[install] creating the environment for $($info.name) ($($info.onnxruntime))"
& $Python -m venv $Target
$VPy = Join-Path $Target "Scripts\python.exe"
& $VPy -m pip install --quiet --no-index --find-links (Join-Path $Bundle "wheels") $info.requirement
if ($LASTEXITCODE -ne 0) { throw "pip install failed" }
if ($info.onnxruntime -eq "gpu") {
    & $VPy -m pip uninstall --quiet -y onnxruntime
    & $VPy -m pip install --quiet --no-index --find-links (Join-Path $Bundle "wheels") --force-reinstall --no-deps onnxruntime-gpu
}
& $VPy -c "import engine, engine.inference.packtransfer, onnxruntime, llama_cpp, sqlcipher3"
if ($LASTEXITCODE -ne 0) { throw "the installed environment does not import" }

if (-not $NoPack) {
    Write-Host "[install] importing the model pack (verified, atomic)"
    $keys = @()
    foreach ($k in $TrustedKey) { $keys += @("--trusted-key", $k) }
    & $VPy -m engine.inference.packtransfer import (Join-Path $Bundle $info.model_pack.file) "$Prefix\models\default" @keys
    if ($LASTEXITCODE -ne 0) { throw "the model pack was refused" }
}

$launchers = @{
    "medvision.cmd"            = "`"%MV%\Scripts\medvision.exe`" %*"
    "medvision-mcp.cmd"        = "`"%MV%\Scripts\python.exe`" -m engine.mcp %*"
    "medvision-dicom-node.cmd" = "`"%MV%\Scripts\python.exe`" -m dicom_node %*"
    "medvision-desktop.cmd"    = "`"%MV%\Scripts\pythonw.exe`" -m desktop %*"
}
foreach ($name in $launchers.Keys) {
    $body = "@echo off`r`nset /p MV=<`"$Prefix\current.txt`"`r`n" +
            "if not defined MEDVISION_MODEL_PACK set MEDVISION_MODEL_PACK=$Prefix\models\default`r`n" +
            $launchers[$name] + "`r`n"
    Set-Content -Path (Join-Path "$Prefix\bin" $name) -Value $body -Encoding ASCII
}
$current = Join-Path $Prefix "current.txt"
if (Test-Path $current) { Copy-Item $current (Join-Path $Prefix "previous.txt") -Force }
Set-Content -Path "$current.new" -Value $Target -Encoding ASCII -NoNewline
Move-Item -Force "$current.new" $current
Write-Host "[install] installed $($info.name) into $Prefix (run $Prefix\bin\medvision.cmd)"
