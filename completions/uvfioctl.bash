# SPDX-License-Identifier: BSD-3-Clause
# bash completion for uvfioctl(8): subcommands, PCI addresses and driver
# names, the latter two asked of the running daemon.
_uvfioctl() {
  local cur prev words cword
  _init_completion 2>/dev/null || {
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  }
  local subs="ls cat readlink write tree list bind unbind info config sriov stats top trace mount"
  local rundir=() i sub=""
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      --rundir) rundir=(--rundir "${words[i + 1]}"); ((i++)) ;;
      --format | -o | --output | -c | --command) ((i++)) ;;
      --rundir=*) rundir=("${words[i]}") ;;
      -*) ;;
      *) [ -z "$sub" ] && sub=${words[i]} ;;
    esac
  done
  if [ "$prev" = --rundir ]; then
    COMPREPLY=($(compgen -d -- "$cur"))
    return
  fi
  if [ "$sub" = trace ]; then
    case $prev in
      -c | --command)
        COMPREPLY=($(compgen -W "VERSION DMA_MAP DMA_UNMAP DEVICE_GET_INFO DEVICE_GET_REGION_INFO DEVICE_GET_REGION_IO_FDS DEVICE_GET_IRQ_INFO DEVICE_SET_IRQS REGION_READ REGION_WRITE DMA_READ DMA_WRITE DEVICE_RESET REGION_WRITE_MULTI DEVICE_FEATURE MIG_DATA_READ MIG_DATA_WRITE" -- "$cur"))
        return ;;
    esac
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W "--command --json --help" -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$(uvfioctl "${rundir[@]}" ls bus/pci/devices 2>/dev/null)" -- "$cur"))
    fi
    return
  fi
  if [ "$sub" = stats ]; then
    case $prev in
      --format) COMPREPLY=($(compgen -W "text json prometheus" -- "$cur")); return ;;
      -o | --output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W "--format --output --json --help" -- "$cur"))
      return
    fi
  fi
  if [ -z "$sub" ]; then
    COMPREPLY=($(compgen -W "$subs --rundir --json --help" -- "$cur"))
    return
  fi
  # Words after the subcommand (not options).
  local n=0
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in --rundir | --format | -o | --output | -c | --command) ((i++)) ;; -*) ;; *) ((n++)) ;; esac
  done
  local bdfs drivers
  bdfs() { uvfioctl "${rundir[@]}" ls bus/pci/devices 2>/dev/null; }
  drivers() { uvfioctl "${rundir[@]}" ls bus/pci/drivers 2>/dev/null; }
  case $sub in
    bind)
      if [ "$n" -eq 1 ]; then COMPREPLY=($(compgen -W "$(bdfs)" -- "$cur"));
      elif [ "$n" -eq 2 ]; then COMPREPLY=($(compgen -W "$(drivers)" -- "$cur")); fi ;;
    unbind | info | config | sriov | stats)
      [ "$n" -eq 1 ] && COMPREPLY=($(compgen -W "$(bdfs)" -- "$cur")) ;;
    mount)
      [ "$n" -eq 1 ] && COMPREPLY=($(compgen -d -- "$cur")) ;;
    ls | cat | readlink | write)
      if [ "$n" -eq 1 ]; then
        local dir=${cur%/*}
        [ "$dir" = "$cur" ] && dir=""
        local e
        COMPREPLY=()
        for e in $(uvfioctl "${rundir[@]}" ls "${dir:-.}" 2>/dev/null); do
          COMPREPLY+=("${dir:+$dir/}$e")
        done
        COMPREPLY=($(compgen -W "${COMPREPLY[*]}" -- "$cur"))
      fi ;;
  esac
}
complete -F _uvfioctl uvfioctl
