#!/usr/bin/env python3
"""Truncated / corrupt JPEGs: does PIL (Pillow + libjpeg-turbo) refuse each one, does the
decoder refuse it, and (when both decode it) are the coefficients libjpeg's? Needs the files
made by check_jpeg_coefficients.py in /tmp/jhuff_coef_cases.
Usage: ~/venv-ref/bin/python scripts/check_jpeg_truncation.py DUMP_BINARY [all]
"""
import os, subprocess, sys, io
import numpy as np
from PIL import Image
W = '/tmp/jhuff_trunc'
C = '/tmp/jhuff_coef_cases'
srcs = {'base': 'chelsea_full_q75.jpg', 'prog': 'chelsea_full_prog.jpg', 'rst': 'chelsea_full_rst1.jpg', 'gray': 'astronaut_portrait_17x33_gray.jpg', 'seq3': 'chelsea_full_seq3.jpg', 'pil': 'chelsea_full_pil_q95_sub2.jpg'}
cases = []
rng = np.random.default_rng(3)
for k, f in srcs.items():
    d = open(os.path.join(C, f), 'rb').read()
    sos = d.find(b'\xff\xda')
    n = len(d)
    offs = sorted(set(list(range(0, min(sos + 14, n), 9)) + [sos + 10, sos + 14, sos + 20] + list(rng.integers(sos + 20, n - 2, 15)) + list(range(n - 24, n + 1))))
    for o in offs:
        cases.append((f'{k}_cut{o}', d[:o]))
    e = d[:-2]
    cases.append((f'{k}_noeoi', e))
    cases.append((f'{k}_noeoi_pad0', e + b'\0' * 16))
    cases.append((f'{k}_extra_after_eoi', d + b'garbage\xff\xd8\xff'))
    cases.append((f'{k}_soi_after_eoi', d + d))
    cases.append((f'{k}_soi_before_eoi', d[:-2] + b'\xff\xd8' + d[-2:]))
    cases.append((f'{k}_com_before_eoi', d[:-2] + b'\xff\xfe\x00\x04hi' + d[-2:]))
    cases.append((f'{k}_dht_before_eoi_trunc', d[:-2] + b'\xff\xc4\x00\x40\x00'))
    for j in range(6):
        p = int(rng.integers(sos + 20, n - 2))
        cases.append((f'{k}_garbage{j}_{p}', d[:p] + bytes(rng.integers(0, 256, 5, dtype=np.uint8)) + d[p:]))
        q = int(rng.integers(sos + 20, n - 2))
        cases.append((f'{k}_flip{j}_{q}', d[:q] + bytes([d[q] ^ 0x10]) + d[q + 1:]))
        r = int(rng.integers(sos + 20, n - 2))
        cases.append((f'{k}_marker{j}_{r}', d[:r] + b'\xff\xd9' + d[r:]))
    # wrong RST numbers
    if k == 'rst':
        idx = [i for i in range(sos, n - 1) if d[i] == 0xFF and 0xD0 <= d[i + 1] <= 0xD7]
        for j, i in enumerate(idx[5:200:40]):
            for nv in (0xD0 + ((d[i + 1] - 0xD0 + 1) % 8), 0xD0 + ((d[i + 1] - 0xD0 + 3) % 8), 0xD0 + ((d[i + 1] - 0xD0 - 1) % 8)):
                cases.append((f'rst_wrong{j}_{nv:x}', d[:i + 1] + bytes([nv]) + d[i + 2:]))
            cases.append((f'rst_missing{j}', d[:i] + d[i + 2:]))
lst = open(f'{W}/list.tsv', 'w')
names = []
for name, data in cases:
    p = f'{W}/{name}.jpg'
    open(p, 'wb').write(data)
    lst.write(f'{p}\t{p}.dump\n')
    names.append(p)
lst.close()
out = subprocess.run([sys.argv[1], '--batch', f'{W}/list.tsv'], capture_output=True, text=True).stdout
mine = {}
for l in out.splitlines():
    a = l.split(' ', 2)
    mine[a[1]] = (a[0], a[2] if len(a) > 2 else '')
import jpeglib
jpeglib.version.set('turbo210')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_jpeg_coefficients import read_dump
agree = dis = 0
rows = []
for p in names:
    try:
        im = Image.open(p); im.load(); pil = 'OK'
    except Exception as ex:
        pil = 'ERR ' + str(ex)[:60]
    m = mine.get(p, ('CRASH', ''))
    same = (pil == 'OK') == (m[0] == 'OK')
    note = ''
    if same and pil == 'OK':
        try:
            ref = jpeglib.read_dct(p)
            arrays = [ref.Y] + ([ref.Cb, ref.Cr] if ref.has_chrominance else [])
            md = read_dump(p + '.dump')
            if not all(np.array_equal(a, b) for a, (q, b) in zip(arrays, md)):
                note = 'COEF-DIFF'
        except Exception as ex:
            note = 'jpeglib: ' + str(ex)[:40]
    if same and not note.startswith('COEF'):
        agree += 1
    else:
        dis += 1
    rows.append((os.path.basename(p), pil, m[0] + ' ' + m[1][:70], 'same' if same else 'DIFFERENT', note))
for r in rows:
    if r[3] != 'same' or r[4] or (len(sys.argv) > 2):
        print(' | '.join(r))
print(f'agree {agree} / {agree + dis}')
