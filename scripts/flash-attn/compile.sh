#!/bin/bash
# Runs on the GPU machine (see prepare.sh): compiles the kernels in todo.txt, 16 at a time,
# for at most SECONDS, then packs the objects not sent before into $OUT (<= 15 MiB parts).
#   bash .carry/fa/compile.sh SECONDS
set -u
limit=$1
root=/tmp/fa
mkdir -p $root/obj
[ -d $root/src ] || tar -xJf .carry/fa/src.tar.xz -C $root
cp .carry/fa/todo.txt $root/todo.txt
hash=$(cat .carry/fa/header-hash)
cd $root/src/candle-flash-attn
C=$root/src/cutlass
export C root hash
one() {
  local name; name=$(basename "$1" .cu).o
  [ -f $root/obj/$name ] && return 0
  /usr/local/cuda/bin/nvcc -gencode arch=compute_90a,code=sm_90a -c -o $root/obj/$name.tmp \
    --default-stream per-thread -std c++17 -O3 -U__CUDA_NO_HALF_OPERATORS__ \
    -U__CUDA_NO_HALF_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__ \
    -U__CUDA_NO_BFLOAT16_CONVERSIONS__ --expt-relaxed-constexpr --expt-extended-lambda \
    --use_fast_math -DCANDLE_FLASH_ATTN_HEADER_HASH=$hash -Xcompiler -fPIC \
    -I$C -I$C/include -I$C/tools/util/include -DUSE_CUTLASS -Xcompiler -fPIC "$1" \
    2>/dev/null && mv $root/obj/$name.tmp $root/obj/$name && echo "done $name"
}
export -f one
/usr/local/cuda/bin/nvcc --version | tail -1
start=$(date +%s)
timeout "$limit" bash -c 'xargs -P "$(nproc)" -n 1 bash -c "one \$0" < $root/todo.txt'
echo "compiled for $(( $(date +%s) - start )) s; $(ls $root/obj/*.o 2>/dev/null | wc -l) objects"
cd $root/obj
touch $root/sent.txt
ls *.o 2>/dev/null | grep -v -x -F -f $root/sent.txt > $root/new.txt || true
[ -s $root/new.txt ] || { echo "nothing new"; exit 0; }
tar -cf - -T $root/new.txt | xz -T0 -6 | split -b 15M - "$OUT/objs.$(date +%s).part."
cat $root/new.txt >> $root/sent.txt
ls -la "$OUT"
