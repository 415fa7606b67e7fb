# Ray cluster over a SLURM allocation, for slurm/tune.sh and slurm/train.sh (sourced, not run).
#
#   start_ray_cluster        head on the first node, one worker per other node (srun steps),
#                            waits until every node has joined, exports RAY_ADDRESS
#   run_driver CMD ARGS...   runs the driver on this (the head) node; forwards USR1 to it
#   stop_ray_cluster         stops this job's Ray processes only (runs on exit)
#
# Ports and the temp dir come from SLURM_JOB_ID, so two jobs sharing a node never collide, and
# shutdown never touches another job's Ray (unlike a plain `ray stop`, which kills every Ray
# process of the user on the node).
#
# Environment: RAY (default: ray), RAY_NODES_TIMEOUT_S (default 300).

RAY=${RAY:-ray}
RAY_NODES_TIMEOUT_S=${RAY_NODES_TIMEOUT_S:-300}
RAY_STEP_PIDS=()

# Eleven ports for one job: gcs node_manager object_manager client_server dashboard agent_grpc
# agent_listen metrics runtime_env_agent min_worker max_worker. 200 ports per job, 200 job slots
# in 20000-59999: jobs whose ids differ by less than 200 never share a port.
ray_job_ports() {
    local base=$(( 20000 + ($1 % 200) * 200 ))
    echo "$base $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5))" \
         "$((base + 6)) $((base + 7)) $((base + 8)) $((base + 10)) $((base + 199))"
}

# Alive nodes in `ray status` output: the lines of its "Active:" block.
count_active_nodes() {
    "$RAY" status --address "$1" 2>/dev/null \
        | awk '/^Active:/ {on = 1; next} /^(Pending|Recent failures):/ {on = 0} on && /node_/ {n++} END {print n + 0}'
}

start_ray_cluster() {
    : "${SLURM_JOB_ID:?not inside a SLURM allocation (SLURM_JOB_ID is unset)}"
    local nodes head head_ip cpus gpus temp_dir node gcs node_manager object_manager client dashboard \
          agent_grpc agent_listen metrics runtime_env min_worker max_worker
    mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    head=${nodes[0]}
    head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address \
              | tr ' ' '\n' | grep -m1 -E '^[0-9]+(\.[0-9]+){3}$')
    # SLURM_GPUS_PER_TASK is empty when GPUs come from --gres; SLURM_GPUS_ON_NODE is not.
    cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
    gpus=${SLURM_GPUS_PER_TASK:-${SLURM_GPUS_ON_NODE:-0}}
    # Node-local and short: Ray's socket paths must stay under 107 bytes.
    temp_dir=/tmp/ray_${SLURM_JOB_ID}
    read -r gcs node_manager object_manager client dashboard agent_grpc agent_listen metrics \
            runtime_env min_worker max_worker < <(ray_job_ports "$SLURM_JOB_ID")
    local node_args=(--block --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$temp_dir"
                     --node-manager-port="$node_manager" --object-manager-port="$object_manager"
                     --dashboard-agent-grpc-port="$agent_grpc" --dashboard-agent-listen-port="$agent_listen"
                     --metrics-export-port="$metrics" --runtime-env-agent-port="$runtime_env"
                     --min-worker-port="$min_worker" --max-worker-port="$max_worker")

    # Token authentication: every node reads the token from the (shared) home directory.
    export RAY_AUTH_MODE=token
    "$RAY" get-auth-token --generate > /dev/null
    export RAY_ADDRESS="$head_ip:$gcs"
    trap stop_ray_cluster EXIT
    echo "Ray head on $head ($RAY_ADDRESS), ${#nodes[@]} node(s), $cpus CPUs and $gpus GPUs each"
    # The dashboard listens on the head's address: Train's placement-group cleaner calls it
    # from whichever node it runs on.
    srun --nodes=1 --ntasks=1 -w "$head" "$RAY" start --head --node-ip-address="$head_ip" \
        --port="$gcs" --ray-client-server-port="$client" --dashboard-host="$head_ip" \
        --dashboard-port="$dashboard" "${node_args[@]}" &
    RAY_STEP_PIDS+=($!)
    wait_for_ray_nodes 1
    for node in "${nodes[@]:1}"; do
        srun --nodes=1 --ntasks=1 -w "$node" "$RAY" start --address="$RAY_ADDRESS" "${node_args[@]}" &
        RAY_STEP_PIDS+=($!)
    done
    wait_for_ray_nodes "${#nodes[@]}"
    # The dashboard needs the token too (`ray get-auth-token`); it listens on the head's address,
    # reachable from the login node, so one tunnel brings it to a laptop.
    echo "Ray dashboard: http://$head_ip:$dashboard (token auth: paste the output of \`ray get-auth-token\`)"
    echo "from your laptop: ssh -N -L $dashboard:$head_ip:$dashboard ${USER:-$(id -un)}@${SLURM_SUBMIT_HOST:-$(hostname -f)}, then open http://127.0.0.1:$dashboard"
}

wait_for_ray_nodes() {
    local deadline=$(( SECONDS + RAY_NODES_TIMEOUT_S )) active pid
    while active=$(count_active_nodes "$RAY_ADDRESS"); (( active < $1 )); do
        for pid in "${RAY_STEP_PIDS[@]}"; do
            if ! kill -0 "$pid" 2> /dev/null; then
                echo "a Ray node exited while starting (see its output above)" >&2
                return 1
            fi
        done
        if (( SECONDS > deadline )); then
            echo "only $active of $1 Ray nodes joined within ${RAY_NODES_TIMEOUT_S}s" >&2
            return 1
        fi
        sleep 5
    done
    echo "Ray cluster: $active node(s) up"
}

# The driver runs in the background so this shell can take SLURM's USR1 (--signal=B:USR1@...)
# and pass it on: Tune then stops its trials and saves the experiment for a resubmission.
run_driver() {
    local driver status
    "$@" &
    driver=$!
    trap 'echo "USR1: asking the driver to save and stop"; kill -USR1 "$driver"' USR1
    # `wait` returns early when a trapped signal arrives; wait again until the driver has exited.
    while true; do
        status=0
        wait "$driver" || status=$?
        kill -0 "$driver" 2> /dev/null || return "$status"
    done
}

stop_ray_cluster() {
    local pid
    trap - EXIT
    # SIGTERM to `ray start --block` stops the Ray processes it started, and no others.
    for pid in "${RAY_STEP_PIDS[@]}"; do
        kill -TERM "$pid" 2> /dev/null || true
    done
    for pid in "${RAY_STEP_PIDS[@]}"; do
        wait "$pid" 2> /dev/null || true
    done
    RAY_STEP_PIDS=()
    echo "Ray cluster stopped"
}
