#!/usr/bin/env bash
# Builds the default Spanish reminder prompt, sounds/morosos_natalia.gsm
# (8 kHz, mono, GSM 06.10: what Asterisk plays without transcoding), from the
# text below with espeak-ng and sox. Replace it with a real recording for
# production (see sounds/README.md).
#   sudo apt-get install -y espeak-ng sox
set -euo pipefail
cd "$(dirname "$0")"

text="Hola. Le hablamos de su proveedor de internet. \
Le recordamos que tiene una factura pendiente de pago. \
Para evitar la suspensión del servicio en su fecha de corte, \
por favor realice su pago lo antes posible. \
Si ya pagó, por favor ignore este mensaje. Gracias."

tmp=$(mktemp --suffix=.wav)
trap 'rm -f "$tmp"' EXIT
espeak-ng -v es-419 -s 150 -w "$tmp" "$text"
# Telephone band, 8 kHz mono, normalised, then GSM.
sox "$tmp" -r 8000 -c 1 morosos_natalia.gsm gain -6 highpass 300 lowpass 3400 norm -1
bytes=$(stat -c %s morosos_natalia.gsm)
echo "wrote $(pwd)/morosos_natalia.gsm ($((bytes / 1650)) s: GSM is 33 bytes per 20 ms)"
