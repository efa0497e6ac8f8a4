#!/usr/bin/env bash
# Regenerates the SentencePiece parity fixtures of package spm: small BPE
# models trained by spm_train on train.txt, one per normalizer and option
# set the encoder handles, the file of hard lines, and what SentencePiece
# itself makes of those lines (spm_encode ids, spm_decode text). The Go
# tests compare spm.Model with these files; they need no SentencePiece.
#
#   spm/testdata/generate.sh     (needs spm_train, spm_encode, spm_decode:
#                                 Debian's sentencepiece package)
set -euo pipefail
cd "$(dirname "$0")"
spm_encode --version

# hard.txt: one sentence per line; \n only ends lines (a \r stays in its
# line, as std::getline leaves it). Each line names what it tests.
{
  printf '%s\n' 'Hello World, the café is OPEN.'
  printf 'gettext context\x04Open File\n'                     # U+0004, the msgctxt separator
  printf '\x01start \x02middle\x03 end\x7f\n'                   # C0 controls and DEL
  printf 'tab\there\ttwo\t\ttabs\n'
  printf 'carriage\rreturn and form\x0cfeed\n'
  printf '   leading   inner    and trailing spaces   \n'
  printf ' \n'                                                    # whitespace only
  printf '\n'                                                     # empty
  printf 'no\xc2\xa0break\xe3\x80\x80ideographic\xe2\x80\x83em space\n'   # U+00A0, U+3000, U+2003
  printf 'zero\xe2\x80\x8bwidth\xe2\x80\x8cjoiner\xef\xbb\xbfbom\xc2\xadsoft\n' # U+200B, U+200C, U+FEFF, U+00AD
  printf '\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3 \xef\xbd\x81\xef\xbd\x82\xef\xbd\x83 \xef\xbc\x91\xef\xbc\x92\xef\xbc\x93\n' # full-width ABC abc 123
  printf '\xef\xac\x81nance \xef\xac\x82ower \xef\xac\x80\n'     # ligatures fi fl ff
  printf 'e\xcc\x81cole cafe\xcc\x81 A\xcc\x8angstro\xcc\x88m\n' # combining marks: NFC composes
  printf '\xe2\x84\xab \xe2\x84\xa2 \xe2\x91\xa0 x\xc2\xb2 \xe2\x85\xab \xc2\xbd\n'   # Angstrom sign, TM, circled 1, superscript, Roman 12, one half
  printf '\xf0\x9d\x94\x98\xf0\x9d\x94\xab\xf0\x9d\x94\xa6 \xf0\x9d\x90\x80\xf0\x9d\x90\x81\n' # mathematical letters
  printf 'Stra\xc3\x9fe GR\xc3\x96SSER \xe1\xba\x9e \xc4\xb0stanbul \xc4\xb1ss\xc4\xb1z\n'  # sharp s, capital sharp s, dotted/dotless i
  printf '\xce\xa3\xce\x8a\xce\xa3\xce\xa5\xce\xa6\xce\x9f\xce\xa3 \xcf\x83\xce\xaf\xcf\x83\xcf\x85\xcf\x86\xce\xbf\xcf\x82 \xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90\n' # Greek, Cyrillic case
  printf 'HELLO Hello hello \xc3\x9cN\xc3\x8fC\xc3\x96D\xc3\x89 \xc3\x87A\n'   # case folding
  printf 'unknown \xe2\x98\x83 snowman \xe2\x98\x83\xe2\x98\x83 twice \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\xef\xb8\x8f\n' # unknown runs
  printf 'malformed \xff\xfe bytes \xe2\x82 truncated \xc3\n'    # invalid UTF-8
  printf 'literal \xe2\x96\x81 lower block \xe2\x96\x81\xe2\x96\x81 twice\n'  # U+2581 in the input
  printf 'special <s> </s> <unk> <pad> <0x41> pieces as text\n'
  printf 'user <sep> symbol <SEP> and [MASK] mask and <2en> control\n'
  printf 'numbers 3.14 1999 \xe2\x82\xac5 100%% https://example.org/a?b=c\n'
  printf 'x\n'
  printf '\xe2\x80\x83\n'                                         # one em space only
  printf 'mixed\xe2\x80\xa8line\xe2\x80\xa9separators\xc2\x85next\n' # U+2028, U+2029, U+0085
  printf 'hangul \xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab \xea\xb0\x80 jamo \xe3\x84\xb1\n' # conjoining jamo, syllable, compatibility jamo
} > hard.txt

train() {
  local name=$1; shift
  spm_train --input=train.txt --model_prefix="$name" --model_type=bpe --vocab_size=600 \
    --character_coverage=0.9995 --num_threads=1 --seed_sentencepiece_size=100000 \
    --minloglevel=2 "$@"
  rm -f "$name.vocab"
  spm_encode --model="$name.model" --output_format=id < hard.txt > "hard.$name.ids"
  spm_decode --model="$name.model" --input_format=id < "hard.$name.ids" > "hard.$name.decoded"
}

train nmt_nfkc --normalization_rule_name=nmt_nfkc --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 \
  --user_defined_symbols='<sep>,[MASK]' --control_symbols='<2en>'
train nmt_nfkc_cf --normalization_rule_name=nmt_nfkc_cf
train nfkc_cf --normalization_rule_name=nfkc_cf
train bytes --normalization_rule_name=identity --byte_fallback=true \
  --add_dummy_prefix=false --remove_extra_whitespaces=false
ls -l ./*.model
