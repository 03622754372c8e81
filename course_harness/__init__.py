"""The course harness: runs, times, cleans and generates the notebooks (`python -m course_harness`, `course`)."""
