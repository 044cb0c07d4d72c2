#!/usr/bin/env bash
# Builds the default Spanish prompts (8 kHz, mono, GSM 06.10: what Asterisk
# plays without transcoding) from the texts below with espeak-ng and sox:
#   morosos_natalia.gsm   the reminder (campaign.media)
#   overdue-menu.gsm      the keypad options (menu.media)
#   overdue-opt-out.gsm   the opt-out confirmation (menu.opt_out_media)
# Replace them with real recordings for production (see sounds/README.md).
# The menu text names the keys of the example configuration's [menu].
#   sudo apt-get install -y espeak-ng sox
set -euo pipefail
cd "$(dirname "$0")"

make() {
  local name=$1 text=$2 tmp
  tmp=$(mktemp --suffix=.wav)
  espeak-ng -v es-419 -s 150 -w "$tmp" "$text"
  # Telephone band, 8 kHz mono, normalised, then GSM.
  sox "$tmp" -r 8000 -c 1 "$name.gsm" gain -6 highpass 300 lowpass 3400 norm -1
  rm -f "$tmp"
  local bytes
  bytes=$(stat -c %s "$name.gsm")
  echo "wrote $(pwd)/$name.gsm ($((bytes / 1650)) s: GSM is 33 bytes per 20 ms)"
}

make morosos_natalia "Hola. Le hablamos de su proveedor de internet. \
Le recordamos que tiene una factura pendiente de pago. \
Para evitar la suspensión del servicio en su fecha de corte, \
por favor realice su pago lo antes posible. \
Si ya pagó, por favor ignore este mensaje. Gracias."

make overdue-menu "Para hablar con un asesor, marque uno. \
Para escuchar de nuevo el mensaje, marque dos. \
Para hablar con nuestro asistente virtual, marque cero. \
Para no recibir más llamadas de cobro, marque nueve."

make overdue-opt-out "Listo. No volveremos a llamarle por este medio. \
Puede comunicarse con nosotros cuando lo desee. Hasta luego."
