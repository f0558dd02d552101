# shellcheck shell=bash
# keep FROM NAME: copy a finished sweep's reports (not its per-run files) into benchmarks/results/NAME, one folder per
# sweep folder that holds a results.json (a several-student sweep's FROM/STUDENT too). Sourced by the study scripts.
keep() {
    local from="$1" name="$2"
    for folder in "$from" "$from"/*/; do
        [ -f "$folder/results.json" ] || continue
        local to="benchmarks/results/$name${folder#"$from"}"
        mkdir -p "$to"
        cp "$folder"/{results.json,summary.md,heatmap.png,objectives.png} "$to"/
    done
}
